// Shared by every page of the local Loop's UI: CSRF-carrying JSON posts, live-refreshing sections, deploy buttons.
'use strict';
const llnode = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  async function post(url, body) {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify(body || {}),
      credentials: 'same-origin',
    });
    let answer = null;
    try { answer = await response.json(); } catch (e) { answer = null; }
    if (response.status === 401) { window.location.reload(); }
    if (!response.ok) {
      const detail = answer && answer.detail !== undefined ? answer.detail : response.statusText;
      throw new Error(typeof detail === 'string' ? detail : JSON.stringify(detail));
    }
    return answer;
  }

  function say(element, text, isError) {
    if (!element) return;
    element.textContent = text;
    element.classList.toggle('error', !!isError);
  }

  // A section with data-live="MS" is fetched again from this page's URL every MS milliseconds and swapped in.
  function liveSections() {
    document.querySelectorAll('[data-live][id]').forEach((section) => {
      const every = Math.max(500, parseInt(section.dataset.live, 10) || 5000);
      const refresh = async () => {
        try {
          const response = await fetch(window.location.href, { credentials: 'same-origin' });
          if (response.ok && !response.redirected) {
            const page = new DOMParser().parseFromString(await response.text(), 'text/html');
            const fresh = page.getElementById(section.id);
            if (fresh) section.replaceChildren(...fresh.childNodes);
          }
        } catch (e) { /* the next refresh tries again */ }
        setTimeout(refresh, every);
      };
      setTimeout(refresh, every);
    });
  }

  function deployButtons() {
    const message = document.getElementById('deploy-message');
    document.querySelectorAll('button.deploy').forEach((button) => {
      button.addEventListener('click', async () => {
        button.disabled = true;
        const path = window.location.pathname.replace(/\/models\/?$/, '/deployment');
        try {
          const answer = await post(path, { model_id: button.dataset.model });
          say(message, `deployed ${answer.target.version}`);
          window.location.reload();
        } catch (e) {
          say(message, `deploy failed: ${e.message}`, true);
          button.disabled = false;
        }
      });
    });
  }

  document.addEventListener('DOMContentLoaded', () => { liveSections(); deployButtons(); });
  return { post, say };
})();

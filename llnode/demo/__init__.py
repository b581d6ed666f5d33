"""``llnode demo``: a complete active-learning loop on one machine, and the pieces it is built from.

The local Loop with the demo project, a torch trainer that really learns (:mod:`llnode.demo.torch_trainer`), a
torch detector that follows the Loop's deployment (:mod:`llnode.demo.torch_detector`), and images flowing back
through the detector's outbox into the next training (:mod:`llnode.demo.command`). Importing this package imports
neither torch nor any node: each module loads what it needs when it is used.
"""

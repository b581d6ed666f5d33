"""Helpers for writing a node's program, under the reference 0.27's names (``learning_loop_node.helpers``)."""

from __future__ import annotations

from llnode.helpers.entrypoint import NodeArgumentParser, node_parser, run_node

__all__ = ['NodeArgumentParser', 'node_parser', 'run_node']

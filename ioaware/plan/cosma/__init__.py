"""COSMA (Li, Gupta, Malik; arXiv 2311.18246): optimal scheduling, allocation and replacement of on-chip memory for a
DNN graph, as an ILP (HiGHS, per step as in the paper) and as a CP-SAT model (rectangles), with the paper's
baselines, a divide-and-conquer heuristic for large graphs and an independent plan validator. README.md has the
numbers."""

from .baselines import arena_belady
from .graph import NAS_NETWORKS, PAPER_NETWORKS, Graph, available, chain_graph, load_graph
from .plan import Plan
from .solve import Budgets, budgets, solve
from .validate import Check, check

__all__ = ["Graph", "Plan", "Budgets", "Check", "load_graph", "available", "chain_graph", "budgets", "solve",
           "arena_belady", "check", "PAPER_NETWORKS", "NAS_NETWORKS"]

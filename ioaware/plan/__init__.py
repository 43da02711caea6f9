"""Planners above the runtime: scratchpad scheduling and allocation (COSMA), network x accelerator co-exploration
(NASAIC). Solvers are HiGHS (highspy) and OR-Tools CP-SAT; planners a kernel needs at dispatch live beside it."""

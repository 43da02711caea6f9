"""A thin column/row collector for HiGHS: models are built as arrays and handed over in one `passModel`.

Building through highspy's expression API costs a Python object per term; the per-step COSMA model has 10^5 terms.
"""

from __future__ import annotations

import time

import numpy as np


class Milp:
    def __init__(self):
        self.lb, self.ub, self.cost, self.integer = [], [], [], []
        self.row_lb, self.row_ub = [], []
        self.rows, self.cols, self.vals = [], [], []

    def var(self, lb=0.0, ub=1.0, cost=0.0, integer=True) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        self.cost.append(cost)
        self.integer.append(integer)
        return len(self.lb) - 1

    def row(self, terms, lb=-np.inf, ub=np.inf) -> None:
        """sum(coef * var) in [lb, ub]; terms: iterable of (var, coef); repeated vars are summed by HiGHS' CSR."""
        r = len(self.row_lb)
        merged: dict[int, float] = {}
        for v, c in terms:
            merged[v] = merged.get(v, 0.0) + c
        for v, c in merged.items():
            if c:
                self.rows.append(r)
                self.cols.append(v)
                self.vals.append(c)
        self.row_lb.append(lb)
        self.row_ub.append(ub)

    @property
    def n_vars(self) -> int:
        return len(self.lb)

    @property
    def n_rows(self) -> int:
        return len(self.row_lb)

    def solve(self, time_limit: float, threads: int = 2, start: np.ndarray | None = None, seed: int = 0,
              gap: float = 0.0):
        """Returns (status name, x, objective, bound, seconds); x is None when HiGHS found no feasible point."""
        import highspy

        t0 = time.perf_counter()
        h = _new_highs(highspy)
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", float(time_limit))
        h.setOptionValue("threads", int(threads))
        h.setOptionValue("random_seed", int(seed))
        h.setOptionValue("mip_rel_gap", float(gap))
        lp = highspy.HighsLp()
        n, m = self.n_vars, self.n_rows
        lp.num_col_, lp.num_row_ = n, m
        lp.col_cost_ = np.asarray(self.cost, dtype=np.float64)
        lp.col_lower_ = np.asarray(self.lb, dtype=np.float64)
        lp.col_upper_ = np.asarray(self.ub, dtype=np.float64)
        inf = highspy.kHighsInf
        lp.row_lower_ = np.where(np.isinf(self.row_lb), -inf, self.row_lb).astype(np.float64)
        lp.row_upper_ = np.where(np.isinf(self.row_ub), inf, self.row_ub).astype(np.float64)
        rows = np.asarray(self.rows, dtype=np.int64)
        cols = np.asarray(self.cols, dtype=np.int64)
        vals = np.asarray(self.vals, dtype=np.float64)
        order = np.lexsort((rows, cols))  # column-wise
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, m
        lp.a_matrix_.start_ = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))]).astype(np.int32)
        lp.a_matrix_.index_ = rows[order].astype(np.int32)
        lp.a_matrix_.value_ = vals[order]
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in self.integer]
        h.passModel(lp)
        if start is not None:
            sol = highspy.HighsSolution()
            sol.col_value = list(map(float, start))
            sol.value_valid = True
            h.setSolution(sol)
        h.run()
        status = h.modelStatusToString(h.getModelStatus())
        info = h.getInfo()
        has = info.primal_solution_status >= 2  # kSolutionStatusFeasible
        x = np.asarray(h.getSolution().col_value) if has else None
        obj = info.objective_function_value if has else None
        bound = info.mip_dual_bound
        return status, x, obj, bound, time.perf_counter() - t0


def _new_highs(highspy):
    """highspy prints its banner from C on file descriptor 1 when the first Highs is made; send it to stderr so that
    `--json -` keeps stdout for the JSON alone."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return h


"""Read Nsight Compute's --csv output: one dict of metric -> value per profiled launch, in launch order."""

import collections
import csv


def ncu_rows(path):
    rows = collections.OrderedDict()
    with open(path) as f:
        for d in csv.DictReader(line for line in f if line.startswith('"')):
            rows.setdefault(int(d["ID"]), {})["kernel_name"] = d["Kernel Name"]
            v = d["Metric Value"].replace(",", "")
            try:
                rows.setdefault(int(d["ID"]), {})[d["Metric Name"]] = float(v)
            except ValueError:
                pass
    return list(rows.values())

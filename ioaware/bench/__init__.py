"""One benchmark registry and one runner (`ioaware bench OP`); results go to benchmarks/results/."""

BENCHMARKS = {"attention": "ioaware.bench.attention", "decode": "ioaware.bench.decode",
              "fftconv": "ioaware.bench.fftconv",
              "gemm": "ioaware.bench.gemm", "rnn": "ioaware.bench.rnn"}

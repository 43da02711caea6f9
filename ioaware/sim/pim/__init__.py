"""PIM-GPT (arXiv 2310.09385): GPT decoding in GDDR6 processing-in-memory beside a small ASIC, simulated command by
command on SimPy. `ioaware sim pim --model gpt2-xl` runs it; README.md says what is modelled and what is assumed.

Import the submodules directly (`ioaware.sim.pim.system`, `.baselines`, ...): this package file stays import-light so
`measure.py` runs on machines that have torch but not simpy.
"""

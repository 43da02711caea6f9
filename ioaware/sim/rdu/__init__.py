"""SambaNova SN40L (arXiv 2405.07518): three memory tiers per socket (PMU SRAM, HBM, DDR), operator fusion into
streaming dataflow, and a composition of experts that switches models DDR -> HBM. `ioaware sim rdu` runs it;
README.md says what is modelled and what is assumed."""

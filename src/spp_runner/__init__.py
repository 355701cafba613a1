"""The SPP runner: plan, launch, inspect and tear down an SPP (DPDK Soft Patch Panel) session."""

"""Adapters of kernel interfaces (procfs, sysfs, cgroupfs, IRQs, workqueues), each under a root
given as a parameter. They may import kcm's pure core and errors, never the commands."""

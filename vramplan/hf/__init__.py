"""The real frameworks (transformers, peft, bitsandbytes), shared by the trace and the profiler.

``build``: the model and training step from (Arch, Scenario), ``prepare`` the one preparation of a
loaded model; ``tracker``: live-tensor byte counting; ``interventions``: every place vramplan
patches, replaces or stands in for third-party code (indexed there), including the CUDA program's
emulation on CPU; ``grouped_mm``: the MoE grouped-mm autograd stand-in.
Nothing here imports torch at import time.
"""

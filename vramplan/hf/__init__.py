"""The real frameworks (transformers, peft, bitsandbytes), shared by the trace and the profiler.

``build``: the model and training step from (Arch, Scenario); ``tracker``: live-tensor byte counting;
``cuda_path``: allocations bitsandbytes makes inside CUDA kernels that an op-level trace cannot see.
Nothing here imports torch at import time.
"""

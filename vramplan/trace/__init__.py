"""Trace engine: the real transformers + peft + bitsandbytes training step, run on fake tensors.

``trace(arch, scenario)`` builds the model exactly as ``vramplan.hf.build`` does for a real run, makes
every tensor a ``FakeTensor`` on CPU (shapes and dtypes, no data, no memory), runs one or more full
training steps (forward with labels, backward, optimizer step) and counts live storage bytes with
``LiveTensorTracker`` (512-byte rounding of the CUDA caching allocator). The result is what PyTorch
allocates for the step, split into the shared categories.

What an op-level trace cannot see (CUDA context, cuBLAS workspace, bitsandbytes' fused 4-bit kernel
dequantizing a whole weight inside the op, allocator fragmentation) is added by
``vramplan.analytic.runtime.runtime_components``, shared with the analytic engine.

Modules:

- ``engine``: ``trace()``, the engine (``vramplan.engine`` signature), and the breakdown it returns;
- ``run``: one traced run (``trace_run``, ``TraceRun``, ``StepFigures``);
- ``extrapolate``: the layer plan and the exact extrapolation from short runs (``layer_plan``);
- ``labels``: the component of each allocation and the phases of a step (``Phase``, ``Labeller``, ``NOTES``);
- ``notes``: the breakdown's notes and the framework versions.

What the trace changes in the frameworks is indexed in ``vramplan.hf.interventions``.
Torch is imported only when a trace runs.
"""

from vramplan.trace.engine import trace
from vramplan.trace.extrapolate import layer_plan
from vramplan.trace.labels import NOTES, Phase
from vramplan.trace.run import StepFigures, TraceRun, trace_run

__all__ = ["NOTES", "Phase", "StepFigures", "TraceRun", "layer_plan", "trace", "trace_run"]

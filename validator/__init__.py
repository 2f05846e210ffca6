"""The sandboxed validator: checks uploaded checkpoints and datasets, and whether a checkpoint fits
a job's architecture, in a separate, resource-limited process started per check by the API
(``api/validation.py``), so the API process never imports torch nor holds an upload's tensors.

``python -m validator --memory-bytes N --cpu-seconds S`` applies its limits first, reads one JSON
request from stdin and writes one JSON reply to stdout (``protocol.py``). ``protocol``,
``limits``, ``dataset`` and the safetensors path of ``checkpoint`` import no torch.
"""

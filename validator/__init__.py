"""The sandboxed validator: checks uploaded checkpoints and datasets, and whether a checkpoint fits
a job's architecture, outside the API process (``api/validation.py`` is its client), so the API
never imports torch nor holds an upload's tensors.

``python -m validator --socket PATH`` (``__main__.py``) is a server started by the API with no
credentials in its environment; each check is one connection, served by a forked child (a spare,
forked and warmed up before the request came: ``check_pool.py``) that reads the request
(``protocol.py``), caps its own memory, CPU time and wall-clock time (``limits.py``) and runs it
(``service.py``). ``protocol``, ``limits``, ``dataset`` and the
safetensors path of ``checkpoint`` import no torch; the API imports ``protocol``, ``dataset``
and the result types of ``checkpoint``.
"""

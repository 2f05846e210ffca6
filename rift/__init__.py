"""RiFT (Robust Critical Fine-Tuning, ICCV 2023) as a PyTorch library.

Pure PyTorch: nothing here imports the web, database or queue layers.
"""

__version__ = "0.1.0"

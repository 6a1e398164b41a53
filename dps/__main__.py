"""``python -m dps`` (also ``torchrun --nproc_per_node N -m dps bench images ...``)."""
from .cli import main

main()

"""``python -m worldsim.train <world> ...`` (and ``torchrun --nproc-per-node 2 -m worldsim.train ...``).

The same arguments as ``worldsim train``; each torchrun process joins the process group
(gloo on CPU, nccl on CUDA) and gradients are averaged across processes.
"""

import sys

from worldsim.cli import main

sys.exit(main(["train", *sys.argv[1:]]))

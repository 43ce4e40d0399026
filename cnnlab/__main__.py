"""`python -m cnnlab` (and `torchrun ... -m cnnlab train RECIPE`): the `cnnlab` command."""

from cnnlab.cli import main

main()

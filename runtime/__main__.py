"""`python -m genattn_runtime recommend|serve|runtime-timings ...`: the runtime's command line
without the training stack. `python -m genattn_runtime.service ...` and
`python -m genattn_runtime.triton_engine ...` run its `serve` through this entry point, so that
the CLI imports the engines and no engine imports the CLI."""
from .cli import main

main(prog_name="python -m genattn_runtime")

"""`python -m app COMMAND ...` (app/cli.py), with a quick exit.

A command that returns has done all its work. Its process then ends as any Python process
does, in the same order: other threads finished, every exit hook run (Ray's shutdown among
them), output flushed; but without the interpreter's teardown of the modules it loaded
(torch, Ray, pandas), which takes 1-2 s on 2 cores and writes nothing
(`app.ray_compat.quick_exit`, called by `app.cli.entry`, also the `raytab` command).
"""

from app.cli import entry

entry()

"""``easyfaas``: the command line for a pod — deploy directories, invoke, list, describe and remove
functions, manage triggers and asynchronous invocations.

One module per job: :mod:`cli.settings` (flags, environment, profile file), :mod:`cli.client` (the
synchronous HTTP client), :mod:`cli.packaging` (zip a directory, dependencies installed into it),
:mod:`cli.readiness` (waiting for a code image), :mod:`cli.stack` (the stack file schema), and one
module per command group, wired together in :mod:`cli.app`.
"""

"""``easyfaas`` / ``python -m cli``: run the application and turn every failure into its exit code.

Failures the CLI knows about (:class:`cli.exits.CliError`) are one line on stderr — or, with
``--output json``, a JSON object on stderr — never a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

import typer

from cli.app import app
from cli.exits import CliError, ExitCode
from cli.state import CliState


def main(argv: Sequence[str] | None = None) -> int:
    st = CliState()
    command = typer.main.get_command(app)
    try:
        command.main(list(sys.argv[1:] if argv is None else argv), prog_name="easyfaas", obj=st,
                     standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else ExitCode.USAGE)
    except CliError as err:
        if st.output.json:
            sys.stderr.write(json.dumps({"Message": err.message, "ExitCode": int(err.code), **err.detail},
                                        ensure_ascii=False) + "\n")
        else:
            sys.stderr.write(f"error: {err.message}\n")
            output = err.detail.get("Output")
            if output:
                sys.stderr.write(str(output) + "\n")
        return int(err.code)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

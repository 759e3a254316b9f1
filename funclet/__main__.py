"""`python -m funclet`: the privileged sandbox daemon."""

from easyfaas.daemon_imports import keep_terminal_libraries_out

keep_terminal_libraries_out()

from funclet.app import main  # noqa: E402

if __name__ == "__main__":
    main()

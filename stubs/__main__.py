"""Entry point of the stubs daemon (function registry): ``python -m stubs`` / ``easyfaas-stubs``."""

from easyfaas.daemon_imports import keep_terminal_libraries_out

keep_terminal_libraries_out()

from stubs.daemon import main  # noqa: E402

if __name__ == "__main__":
    main()

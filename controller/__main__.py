"""``python -m controller``: run the controller daemon."""

from easyfaas.daemon_imports import keep_terminal_libraries_out

keep_terminal_libraries_out()

from controller.app import main  # noqa: E402

if __name__ == "__main__":
    main()

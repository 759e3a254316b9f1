"""`python -m httptrigger`: HTTP requests in, invocations out."""

from easyfaas.daemon_imports import keep_terminal_libraries_out

keep_terminal_libraries_out()

from httptrigger.app import main  # noqa: E402

if __name__ == "__main__":
    main()

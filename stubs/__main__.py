"""Entry point of the stubs daemon (function registry): ``python -m stubs`` / ``easyfaas-stubs``."""

from stubs.daemon import main

if __name__ == "__main__":
    main()

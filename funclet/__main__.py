"""`python -m funclet`: the privileged sandbox daemon."""

from funclet.app import main

if __name__ == "__main__":
    main()

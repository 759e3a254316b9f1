"""``python -m controller``: run the controller daemon."""

from controller.app import main

if __name__ == "__main__":
    main()

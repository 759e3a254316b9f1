"""`python -m httptrigger`: HTTP requests in, invocations out."""

from httptrigger.app import main

if __name__ == "__main__":
    main()

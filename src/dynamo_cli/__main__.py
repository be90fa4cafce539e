"""`python -m dynamo_cli ...` (and `accelerate launch -m dynamo_cli ...`) is the `dynamo` command."""
from dynamo_cli.cli import main

if __name__ == "__main__":
    main()

"""Offline checks of the deployment files (`make deploy-check`, deploy/deploy.mk).

Each module is a command (`python -m deploy.checks.<name>`) that exits non-zero with one line
per problem; the tests in tests/deploy also call their functions on broken inputs.
"""

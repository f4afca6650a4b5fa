"""``python -m agentapi_db.cli``: same as the ``agentapi-db`` console script."""

from agentapi_db.cli import main

main()

"""agentapi-db: the multi-tenant PostgreSQL data layer of AgentAPI."""

__version__ = "0.1.0"

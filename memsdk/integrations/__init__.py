"""Adapters to agent frameworks (LangChain: `memsdk.integrations.langchain`)."""

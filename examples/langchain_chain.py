"""A LangChain chain that feeds memsdk's memory into a prompt.

The memory ingests the source of Python's ``logging.config`` (a real document every Python
has); a LangChain chain (retriever | format | prompt | model | parser) answers a question with
the retrieved passages in its prompt. No model service is reachable here, so the model is
langchain-core's ``ParrotFakeChatModel``, which answers with the prompt it received: what is
printed is exactly what an LLM would have read. Needs the ``langchain`` extra.

    python examples/langchain_chain.py [--memory DIR]
"""

from __future__ import annotations

import argparse
import logging.config
import sys
import tempfile
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import ParrotFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from memsdk import HybridMemory, Scope
from memsdk.integrations.langchain import MemsdkRetriever, memory_tool

QUESTION = "How are handlers configured from a dictionary?"


def format_memory(docs: list[Document]) -> str:
    if not docs:
        return "(memory holds nothing relevant)"
    lines = [f"[memsdk route: {docs[0].metadata['memsdk_reason']}]"]
    for doc in docs:
        first = doc.page_content.strip().splitlines()[:4]
        lines.append(f"- ({doc.metadata.get('source', 'memory')}) " + " / ".join(first)[:300])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", help="memory directory (default: a temporary one)")
    args = parser.parse_args()
    path = args.memory or tempfile.mkdtemp(prefix="memsdk-langchain-")
    source = Path(logging.config.__file__)

    with HybridMemory.open(path) as mem:
        scope = Scope(tenant="demo", user="agent")
        report = mem.ingest(source, scope=scope, metadata={"source": source.name})
        mem.flush()
        print(f"memsdk memory at {mem.path}: {report.chunks} chunks of {source}")

        retriever = MemsdkRetriever(memory=mem, scope=scope, k=3, max_bytes=60)
        prompt = ChatPromptTemplate.from_messages(
            [("human", "Answer from this memory.\n{memory}\n\nQuestion: {question}")]
        )
        chain = (
            {"memory": retriever | format_memory, "question": RunnablePassthrough()}
            | prompt
            | ParrotFakeChatModel()
            | StrOutputParser()
        )
        print("\n== what the LLM receives (the fake model echoes its prompt):")
        print(chain.invoke(QUESTION))

        tool = memory_tool(mem, scope=scope, k=1)
        print(f"\n== the agent tool {tool.name!r}, asked for 'dictConfig':")
        print(tool.invoke({"query": "dictConfig"})[:300])
    return 0


if __name__ == "__main__":
    sys.exit(main())

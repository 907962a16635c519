"""The local model as a LangChain chat model, streaming, inside a LangGraph graph."""

from __future__ import annotations

from typing import Annotated, TypedDict

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agent import PllmChatModel
from editing import GenerationSettings


def test_invoke_and_stream_agree(local_model) -> None:
    chat = PllmChatModel(local=local_model, settings=GenerationSettings(max_new_tokens=24))
    messages = [SystemMessage("You answer in one short sentence."), HumanMessage("What color is the sky on a clear day?")]
    full = chat.invoke(messages)
    assert isinstance(full, AIMessage) and full.content.strip()
    chunks = list(chat.stream(messages))
    assert len(chunks) > 3, "streaming should yield several pieces, not one block"
    assert "".join(c.content for c in chunks) == full.content
    assert "blue" in full.content.lower()


def test_stop_sequences_cut_the_reply(local_model) -> None:
    chat = PllmChatModel(local=local_model, settings=GenerationSettings(max_new_tokens=40))
    reply = chat.invoke([HumanMessage("Count from 1 to 10, separated by commas.")], stop=["5"])
    assert "5" not in reply.content and "4" in reply.content


def test_used_as_a_node_in_a_langgraph_graph(local_model) -> None:
    chat = PllmChatModel(local=local_model, settings=GenerationSettings(max_new_tokens=16))

    class State(TypedDict):
        messages: Annotated[list[BaseMessage], add_messages]

    def respond(state: State) -> dict:
        return {"messages": [chat.invoke(state["messages"])]}

    builder = StateGraph(State)
    builder.add_node("respond", respond)
    builder.add_edge(START, "respond")
    builder.add_edge("respond", END)
    graph = builder.compile()
    out = graph.invoke({"messages": [HumanMessage("Say hello.")]})
    assert isinstance(out["messages"][-1], AIMessage) and out["messages"][-1].content
    streamed = [chunk for chunk, _meta in graph.stream({"messages": [HumanMessage("Say hello.")]}, stream_mode="messages")]
    assert len(streamed) > 1  # tokens reach the graph's message stream as they are generated

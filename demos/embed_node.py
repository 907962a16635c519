"""Add pllm's memory to a LangGraph graph of your own: recall before your node, remember after it."""
import sys
import tempfile
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph

from agent import Context, MemoryState, make_recall_node, make_remember_node
from memory import Memory, MemoryConfig


class State(MemoryState):  # pllm's keys (messages, recollection, ...) plus your own
    turns: int


def my_bot(state: State) -> dict:  # your node: it reads what pllm recalled about this user
    known = "; ".join(f.text() for f in state["recollection"].profile) or "nothing yet"
    return {"messages": [AIMessage(f"What I know about you: {known}")], "turns": state.get("turns", 0) + 1}


memory = Memory(MemoryConfig(home=sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()))
graph = StateGraph(State, context_schema=Context)
graph.add_node("recall", make_recall_node(memory))
graph.add_node("bot", my_bot)
graph.add_node("remember", make_remember_node(memory))
graph.add_edge(START, "recall"), graph.add_edge("recall", "bot"), graph.add_edge("bot", "remember"), graph.add_edge("remember", END)
app = graph.compile()
for text in ["I live in Lisbon and I love surfing.", "What do you know about me?"]:
    out = app.invoke({"messages": [HumanMessage(text)]}, context=Context(user_id="ana"))
    print(f"> {text}\n{out['messages'][-1].content}")

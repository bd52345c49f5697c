"""Rerank: re-orders the feed items a user was just shown, with the bundle's ONNX model.

Fired when the user comes back to the feed after clicking one of its items (walle.toml's
`back-to-feed` trigger). From the session's events since the first exposure (ctx["window"]) it
computes six features per item shown, scores the items with ranker.onnx (make_model.py writes it)
and uploads the new order, best first, with the scores. The events stay on the device.
"""

import math

import walle

# The model's input columns, in order (make_model.py's PRIOR has one weight per column).
FEATURES = (
    "affinity",  # share of this window's clicks in the item's category (0 for clicked items)
    "extra_exposures",  # times shown beyond the first, up to MAX_EXTRA_EXPOSURES, scaled to 0-1
    "clicked",  # 1 if the user clicked the item in this window
    "position",  # where the feed first showed it, scaled to 0-1
    "price",  # log(1 + price) / 10
    "session_ctr",  # the session's feed clicks / exposures over the last 30 minutes
)
MAX_EXTRA_EXPOSURES = 4


class Shown:
    """An item the feed showed in the trigger's window."""

    def __init__(self, item: str, position: float, category: str, price: float) -> None:
        self.item = item
        self.position = position
        self.category = category
        self.price = price
        self.exposures = 1
        self.clicked = False


def number(value: "walle.ArgValue | walle.FeatureValue", default: float = 0.0) -> float:
    """A numeric event arg or feature as a float (`default` when absent or not a number)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default


def shown_items(window: "list[walle.Event]") -> "list[Shown]":
    """The items exposed on the feed, in order of first exposure, with what happened to them."""
    shown: "dict[str, Shown]" = {}
    for event in window:
        if event["page"] != "feed" or not event["item"]:
            continue
        args = event["args"]
        if event["event"] == "expose":
            seen = shown.get(event["item"])
            if seen is None:
                shown[event["item"]] = Shown(
                    event["item"],
                    number(args.get("position")),
                    str(args.get("category", "")),
                    number(args.get("price")),
                )
            else:
                seen.exposures += 1
        elif event["event"] == "click" and event["item"] in shown:
            shown[event["item"]].clicked = True
    return list(shown.values())


def feature_rows(shown: "list[Shown]", features: "dict[str, walle.FeatureValue]") -> "list[float]":
    """The model's input, one row of FEATURES per item, flattened."""
    clicks_by_category: "dict[str, int]" = {}
    for s in shown:
        if s.clicked:
            clicks_by_category[s.category] = clicks_by_category.get(s.category, 0) + 1
    clicks = max(sum(clicks_by_category.values()), 1)
    last_position = max(max(s.position for s in shown), 1.0)
    ctr = number(features["feed_clicks_30m"]) / max(number(features["feed_exposures_30m"]), 1.0)
    rows: "list[float]" = []
    for s in shown:
        affinity = 0.0 if s.clicked else clicks_by_category.get(s.category, 0) / clicks
        extra = min(s.exposures - 1, MAX_EXTRA_EXPOSURES) / MAX_EXTRA_EXPOSURES
        rows += [
            affinity,
            extra,
            1.0 if s.clicked else 0.0,
            s.position / last_position,
            math.log1p(max(s.price, 0.0)) / 10,
            ctr,
        ]
    return rows


def run(ctx: "walle.Context") -> None:
    shown = shown_items(ctx["window"])
    if not shown:
        return
    ranker = walle.nn.load("ranker")
    name, _, dims = ranker.inputs[0]
    if dims[-1] != len(FEATURES):
        raise ValueError("ranker.onnx takes %s features per item, main.py computes %d"
                         % (dims[-1], len(FEATURES)))
    items = walle.Tensor(feature_rows(shown, ctx["features"]), [len(shown), len(FEATURES)])
    scores = ranker.run({name: items})["score"].data
    order = sorted(range(len(shown)), key=lambda i: -scores[i])
    walle.log("reranked", len(shown), "items; first:", shown[order[0]].item)
    walle.upload({
        "session": ctx["matched"][-1]["session"],
        "ts": ctx["matched"][-1]["ts"],
        "order": [shown[i].item for i in order],
        "scores": [round(scores[i], 4) for i in order],
    })

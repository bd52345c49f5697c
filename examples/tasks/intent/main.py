"""Intent: predicts the category of the user's next search query, on the device.

Fired when the user opens the search page after looking at items of known categories (walle.toml's
`search-opened` trigger). Feeds the categories of the last 8 matched events and the session's
search activity (ctx["features"]) to intent.onnx (make_model.py writes it) and uploads only the
prediction: the predicted category, its probability and the top three.
"""

import walle

# The model's categories, in the order of its outputs; an event's category is its index + 1 in
# the model's `recent` input (0 pads a short history).
CATEGORIES = ("electronics", "books", "fashion", "home", "sports", "beauty", "toys", "grocery")
SEQUENCE = 8
TOP = 3


def recent_categories(matched: "list[walle.Event]") -> "list[int]":
    """The category ids of the last SEQUENCE matched events, oldest first, padded with 0."""
    ids = []
    for event in matched:
        category = event["args"].get("category")
        if isinstance(category, str) and category in CATEGORIES:
            ids.append(CATEGORIES.index(category) + 1)
    ids = ids[-SEQUENCE:]
    return [0] * (SEQUENCE - len(ids)) + ids


def count(value: "walle.FeatureValue") -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def run(ctx: "walle.Context") -> "walle.JsonLike":
    features = ctx["features"]
    activity = [
        min(count(features["queries_30m"]) / 10, 1.0),
        count(features["categories_30m"]) / len(CATEGORIES),
    ]
    model = walle.nn.load("intent")
    out = model.run({
        "recent": walle.Tensor(recent_categories(ctx["matched"]), [1, SEQUENCE], "i64"),
        "activity": walle.tensor([activity]),
    })
    probs = out["probs"]
    predicted = int(out["category"].data[0])
    # The model's ArgMax and the probabilities must agree; if not, the model is not the one
    # this script was written for.
    if predicted != probs.argmax() or len(probs.data) != len(CATEGORIES):
        raise ValueError("intent.onnx's outputs do not fit main.py: %r" % out)
    ranked = sorted(range(len(CATEGORIES)), key=lambda i: -probs.data[i])
    return {
        "predicted": CATEGORIES[predicted],
        "confidence": round(probs.data[predicted], 4),
        "top": [[CATEGORIES[i], round(probs.data[i], 4)] for i in ranked[:TOP]],
    }

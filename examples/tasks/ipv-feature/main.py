"""Item-page-view (IPV) feature.

Called once per visit to an item page with the trigger context:
  ctx["matched"]   the enter and exit events of the visit
  ctx["window"]    every event of that session and item from enter to exit
  ctx["features"]  what walle.toml's [[features]] declare, computed by the device's pipeline:
                   dwell time, clicks, add-to-cart and scrolls of the visit, and the item pages
                   the session opened in the last 30 minutes
Returns one record for the cloud. `walle.state` counts this device's visits per item; it lives
in the device's database, so the count survives restarts and upgrades.
"""

import walle


def action_of(event: "walle.Event") -> str:
    return str(event["args"].get("action", ""))


def run(ctx: "walle.Context") -> "walle.JsonLike":
    enter, leave = ctx["matched"][0], ctx["matched"][-1]
    features = ctx["features"]
    actions: "dict[str, int]" = {}
    for e in ctx["window"]:
        if e["event"] == "click":
            name = action_of(e) or "click"
            actions[name] = actions.get(name, 0) + 1
    visits_key = "visits:" + enter["item"]
    visits = walle.state.get(visits_key, 0) + 1
    walle.state[visits_key] = visits
    return {
        "feature": "ipv",
        "session": enter["session"],
        "item": enter["item"],
        "enter_ts": enter["ts"],
        "exit_ts": leave["ts"],
        "dwell_ms": features["dwell_ms"],
        "clicks": features["clicks"],
        "add_to_cart": features["add_to_cart"],
        "scrolls": features["scrolls"],
        "session_item_views_30m": features["session_item_views_30m"],
        "actions": actions,
        "item_visits": visits,
    }

"""Item-page-view (IPV) feature.

Called once per visit to an item page with the trigger context:
  ctx["matched"]  the enter and exit events of the visit
  ctx["window"]   every event of that session and item from enter to exit
Returns one record for the cloud. `walle.state` counts this device's visits per item; it lives
in the device's database, so the count survives restarts and upgrades.
"""

import walle

CART_ACTIONS = ("add_to_cart", "add-to-cart", "cart")


def action_of(event):
    args = event.get("args") or {}
    return args.get("action", "")


def run(ctx):
    enter, leave = ctx["matched"][0], ctx["matched"][-1]
    window = ctx["window"]
    clicks = [e for e in window if e["event"] == "click"]
    actions = {}
    for e in clicks:
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
        "dwell_ms": leave["ts"] - enter["ts"],
        "clicks": len(clicks),
        "add_to_cart": sum(1 for e in clicks if action_of(e) in CART_ACTIONS),
        "scrolls": sum(1 for e in window if e["event"] == "scroll"),
        "actions": actions,
        "item_visits": visits,
    }

"""The demand view for the shop's admins: what shoppers search for and do not find, what they
wait for, and what the alerts did. It owns the search log (what happened, never who: its
writer `activity`, its days' indices `searchlog`, its text `redaction`), the aggregations
over it and the other indices (`queries`, shaped as `report`), and the cached view with its
actions (`view`). It may import `watches`, `alerts`' records, `engine` and `core`; the web
layer and the CLI show it.
"""

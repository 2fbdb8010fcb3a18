"""Your own events: declare an event type, emit it from a handler, receive it typed in another
agent, publish it from the command line, and fold it into state you can rebuild at any point.

    mesh up
    mesh agent run examples.app_events:warehouse &
    mesh agent run examples.app_events:notifier &
    mesh task ship --input '{"order_id": "o-1", "carrier": "ups"}' --wait
    mesh publish --types examples.app_events --type app.orders.shipped --data '{"order_id": "o-2", "carrier": "dhl"}'
    mesh tail 'mesh.app.>' --all --no-follow
    mesh replay state examples.app_events:SHIPMENTS
"""

from __future__ import annotations

import msgspec

from mesh import Agent, AppEvent, Context
from mesh.projections import Handler, HandlerProjection, ProjectionState, Stamp
from topics import Event, Record


class OrderShipped(AppEvent, frozen=True, kw_only=True):
    TYPE = "app.orders.shipped"
    SUBJECT = "mesh.app.orders.{order_id}"
    order_id: str
    carrier: str
    parcels: int = 1


class CustomerNotified(AppEvent, frozen=True, kw_only=True):
    TYPE = "app.orders.notified"
    SUBJECT = "mesh.app.notices.{order_id}"
    order_id: str
    message: str


class Order(msgspec.Struct, frozen=True):
    order_id: str
    carrier: str


warehouse = Agent("warehouse", emits=(OrderShipped,))


@warehouse.task("ship")
async def ship(order: Order, ctx: Context) -> dict[str, str]:
    await ctx.emit(OrderShipped(order_id=order.order_id, carrier=order.carrier))
    return {"shipped": order.order_id}


notifier = Agent("notifier", emits=(CustomerNotified,))


@notifier.on(OrderShipped)
async def notify(record: Record, ctx: Context) -> None:
    shipped = record.data
    assert isinstance(shipped, OrderShipped)  # Agent.on(OrderShipped) delivers nothing else
    await ctx.emit(CustomerNotified(order_id=shipped.order_id, message=f"your order left with {shipped.carrier}"))


class Shipment(msgspec.Struct, kw_only=True):
    carrier: str
    parcels: int
    shipped_seq: int
    notified: bool = False


class ShipmentsState(ProjectionState, kw_only=True):
    orders: dict[str, Shipment] = msgspec.field(default_factory=dict)


class ShipmentsProjection(HandlerProjection[ShipmentsState]):
    """Every order shipped, by order id, and whether its customer was told."""

    name = "shipments"
    version = 1  # bump when the fold changes: older snapshots are then ignored
    state_type = ShipmentsState

    def handlers(self) -> dict[type[Event], Handler[ShipmentsState]]:
        return {OrderShipped: _shipped, CustomerNotified: _notified}


def _shipped(state: ShipmentsState, event: OrderShipped, stamp: Stamp, seq: int) -> None:
    state.orders[event.order_id] = Shipment(carrier=event.carrier, parcels=event.parcels, shipped_seq=seq)


def _notified(state: ShipmentsState, event: CustomerNotified, stamp: Stamp, seq: int) -> None:
    shipment = state.orders.get(event.order_id)
    if shipment is not None:
        shipment.notified = True


SHIPMENTS = ShipmentsProjection()

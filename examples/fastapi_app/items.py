"""The /items routes: a router that app.py includes."""

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

router = APIRouter(prefix="/items", tags=["items"])


class Item(BaseModel):
    name: str
    price: float


ITEMS = [Item(name="coffee", price=3.5), Item(name="bread", price=2.25)]


@router.get("/")
def list_items() -> list[Item]:
    return ITEMS


@router.get("/{index}")
def get_item(index: int) -> Item:
    if not 0 <= index < len(ITEMS):
        raise HTTPException(status_code=404, detail="no such item")
    return ITEMS[index]

from lib.strategies.afloc_review import AFLocReview, review_order

__all__ = ["AFLocReview", "review_order"]

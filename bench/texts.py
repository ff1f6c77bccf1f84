"""The texts the benchmark sections speak, shared so their figures compare."""

TEXTS = {
    "short": "Hello there, how can I help you today?",
    "medium": ("Your order has shipped and should arrive on Thursday. "
               "You can track the parcel from the link in your confirmation email. "
               "Is there anything else I can do for you?"),
    "long": ("Streaming speech synthesis lets a listener hear the first words while the rest of the "
             "paragraph is still being generated, which matters a great deal for voice assistants. "
             "A server that waits for the whole text before it speaks feels slow, however fast its "
             "model is. This benchmark measures how soon the first sound arrives, and what happens "
             "to that number when many people talk to the server at once."),
}
# Soak texts: varied lengths (about 1 to 4 s of audio), so allocations of
# many sizes come and go, as they do in service.
SOAK_TEXTS = [
    "Yes.",
    TEXTS["short"],
    "Your order has shipped and should arrive on Thursday.",
    "Press one for sales, two for support, or stay on the line to speak with someone.",
]

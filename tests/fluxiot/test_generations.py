from fluxiot.generations import Generation, GenerationCached

LOADS: list[tuple[str, str]] = []


class Compiled(GenerationCached):
    generations = Generation("tests:generations:compiled")

    def __init__(self, generation: str) -> None:
        self.generation = generation

    @classmethod
    def load(cls, generation: str = "") -> "Compiled":
        LOADS.append((cls.__name__, generation))
        return cls(generation)


class Other(Compiled):
    generations = Generation("tests:generations:other")


def test_reloaded_only_when_its_generation_moves_and_each_class_keeps_its_own():
    LOADS.clear()
    Compiled.forget()
    Other.forget()
    first = Compiled.current()
    assert Compiled.current() is first and LOADS == [("Compiled", first.generation)]
    other = Other.current()
    assert other is not first and Compiled.current() is first  # separate caches
    Compiled.generations.bump()
    second = Compiled.current()
    assert second is not first and second.generation == Compiled.generations.current()
    assert Other.current() is other  # its generation did not move
    Compiled.forget()
    assert Compiled.current() is not second
    assert [name for name, _ in LOADS] == ["Compiled", "Other", "Compiled", "Compiled"]

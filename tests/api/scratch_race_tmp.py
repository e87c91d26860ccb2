import time, grpc
from tests.helpers import birth_request

def test_race(civil, make_agency):
    results = {"back_to_back": [0, 0], "after_1_2s_idle": [0, 0]}
    for mode in results:
        for _ in range(12):
            if mode != "back_to_back":
                time.sleep(1.2)
            a = make_agency(scopes=("birth:register",))
            try:
                civil.RegisterBirth(birth_request(full_name=""), metadata=a.metadata())
            except grpc.RpcError as e:
                results[mode][e.code() == grpc.StatusCode.UNAUTHENTICATED] += 1
    print(results)

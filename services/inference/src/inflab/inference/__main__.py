from inflab.core.messages import InferenceRequest
from inflab.core.worker import main
from inflab.inference.service import SERVICE, STAGE, make_handler

if __name__ == "__main__":
    main(SERVICE, STAGE, InferenceRequest, make_handler)

// Emulated cuda_runtime_api.h: everything lives in the force-included cuda_emu.h.
#pragma once

#include "cuda_emu.h"

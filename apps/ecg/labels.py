"""SNOMED-CT label tables of the PhysioNet/CinC Challenge 2021 and the label space used for training.

Sources (values, not code): the Challenge's ``dx_mapping_scored.csv``,
``dx_mapping_unscored.csv`` and ``weights.csv`` (physionetchallenges/evaluation-2021).
The 30 scored codes collapse to 26 classes through four equivalences
(CRBBB|RBBB, PAC|SVPB, PVC|VPB, CLBBB|LBBB); the first code of each pair, as written
in ``weights.csv``, is the one the output files carry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

NORMAL_CODE = "426783006"  # sinus rhythm: the "inactive" reference output of the Challenge score

# code, abbreviation, name of the 30 scored codes
_SCORED = """\
164889003,AF,atrial fibrillation
164890007,AFL,atrial flutter
6374002,BBB,bundle branch block
426627000,Brady,bradycardia
733534002,CLBBB,complete left bundle branch block
713427006,CRBBB,complete right bundle branch block
270492004,IAVB,1st degree av block
713426002,IRBBB,incomplete right bundle branch block
39732003,LAD,left axis deviation
445118002,LAnFB,left anterior fascicular block
164909002,LBBB,left bundle branch block
251146004,LQRSV,low qrs voltages
698252002,NSIVCB,nonspecific intraventricular conduction disorder
426783006,NSR,sinus rhythm
284470004,PAC,premature atrial contraction
10370003,PR,pacing rhythm
365413008,PRWP,poor R wave progression
427172004,PVC,premature ventricular contractions
164947007,LPR,prolonged pr interval
111975006,LQT,prolonged qt interval
164917005,QAb,qwave abnormal
47665007,RAD,right axis deviation
59118001,RBBB,right bundle branch block
427393009,SA,sinus arrhythmia
426177001,SB,sinus bradycardia
427084000,STach,sinus tachycardia
63593006,SVPB,supraventricular premature beats
164934002,TAb,t wave abnormal
59931005,TInv,t wave inversion
17338001,VPB,ventricular premature beats
"""

# code, abbreviation, name of the unscored codes that occur in the 2021 training data
_UNSCORED = """\
233892002,AAR,accelerated atrial escape rhythm
164951009,abQRS,abnormal QRS
251187003,AED,atrial escape beat
61277005,AIVR,accelerated idioventricular rhythm
426664006,AJR,accelerated junctional rhythm
251139008,ALR,suspect arm ecg leads reversed
57054005,AMI,acute myocardial infarction
413444003,AMIs,acute myocardial ischemia
426434006,AnMIs,anterior ischemia
54329005,AnMI,anterior myocardial infarction
251173003,AB,atrial bigeminy
195080001,AFAFL,atrial fibrillation and flutter
195126007,AH,atrial hypertrophy
251268003,AP,atrial pacing pattern
106068003,ARH,atrial rhythm
713422000,ATach,atrial tachycardia
233917008,AVB,av block
50799005,AVD,atrioventricular dissociation
29320008,AVJR,atrioventricular junctional rhythm
251166008,AVNRT,atrioventricular node reentrant tachycardia
233897008,AVRT,atrioventricular reentrant tachycardia
251170000,BPAC,blocked premature atrial contraction
418818005,BRU,brugada
74615001,BTS,brady tachy syndrome
426749004,CAF,chronic atrial fibrillation
251199005,CCR,counterclockwise rotation
61721007,CVCL/CCVCL,clockwise or counterclockwise vectorcardiographic loop
698247007,CD,cardiac dysrhythmia
27885002,CHB,complete heart block
204384007,CIAHB,congenital incomplete atrioventricular heart block
53741008,CHD,coronary heart disease
413844008,CMI,chronic myocardial ischemia
251198002,CR,clockwise rotation
82226007,DIB,diffuse intraventricular block
428417006,ERe,early repolarization
13640000,FB,fusion beats
164942001,FQRS,fqrs wave
84114007,HF,heart failure
368009,HVD,heart valve disorder
251259000,HTV,high t-voltage
251200008,ICA,indeterminate cardiac axis
195042002,IIAVB,2nd degree av block
426183003,IIAVBII,mobitz type II atrioventricular block
425419005,IIs,inferior ischaemia
251120003,ILBBB,incomplete left bundle branch block
704997005,ISTD,inferior ST segment depression
49260003,IR,idioventricular rhythm
426995002,JE,junctional escape
251164006,JPC,junctional premature complex
426648003,JTach,junctional tachycardia
253352002,LAA,left atrial abnormality
67741000119109,LAE,left atrial enlargement
446813000,LAH,left atrial hypertrophy
425623009,LIs,lateral ischaemia
445211001,LPFB,left posterior fascicular block
164873001,LVH,left ventricular hypertrophy
55827005,LVHV,left ventricular high voltage
370365005,LVS,left ventricular strain
164865005,MI,myocardial infarction
164861001,MIs,myocardial ischemia
54016002,MoI,mobitz type i wenckebach atrioventricular block
428750005,NSSTTA,nonspecific st t abnormality
164867002,OldMI,old myocardial infarction
282825002,PAF,paroxysmal atrial fibrillation
251205003,PPW,prolonged P wave
67198005,PSVT,paroxysmal supraventricular tachycardia
425856008,PVT,paroxysmal ventricular tachycardia
164912004,PWC,p wave change
253339007,RAAb,right atrial abnormality
164921003,RAb,r wave abnormal
446358003,RAH,right atrial hypertrophy
67751000119106,RAHV,right atrial high voltage
314208002,RAF,rapid atrial fibrillation
89792004,RVH,right ventricular hypertrophy
17366009,SAAWR,sinus atrium to atrial wandering rhythm
65778007,SAB,sinoatrial block
5609005,SARR,sinus arrest
60423000,SND,sinus node dysfunction
49578007,SPRI,shortened pr interval
77867006,SQT,decreased qt interval
55930002,STC,s t changes
429622005,STD,st depression
164931005,STE,st elevation
164930006,STIAb,st interval abnormal
251168009,SVB,supraventricular bigeminy
426761007,SVT,supraventricular tachycardia
266257000,TIA,transient ischemic attack
251223006,TPW,tall p wave
164937009,UAb,u wave abnormal
11157007,VBig,ventricular bigeminy
164884008,VEB,ventricular ectopics
75532003,VEsB,ventricular escape beat
81898007,VEsR,ventricular escape rhythm
164896001,VF,ventricular fibrillation
111288001,VFL,ventricular flutter
266249003,VH,ventricular hypertrophy
195060002,VPEx,ventricular pre excitation
251266004,VPP,ventricular pacing pattern
251182009,VPVC,paired ventricular premature complexes
164895002,VTach,ventricular tachycardia
251180001,VTrig,ventricular trigeminy
195101003,WAP,wandering atrial pacemaker
74390002,WPW,wolff parkinson white pattern
"""

# The official 26 x 26 weights.csv of the 2021 Challenge: partial credit for confusing class i
# (label, row) with class j (output, column). Values verbatim; order as in the file.
_WEIGHTS_CSV = """\
,164889003,164890007,6374002,426627000,733534002|164909002,713427006|59118001,270492004,713426002,39732003,445118002,164947007,251146004,111975006,698252002,426783006,284470004|63593006,10370003,365413008,427172004|17338001,164917005,47665007,427393009,426177001,427084000,164934002,59931005
164889003,1,0.5,0.475,0.3,0.475,0.4,0.3,0.3,0.35,0.35,0.3,0.425,0.45,0.35,0.25,0.3375,0.375,0.425,0.375,0.4,0.35,0.3,0.3,0.375,0.5,0.5
164890007,0.5,1,0.475,0.3,0.475,0.4,0.3,0.3,0.35,0.35,0.3,0.425,0.45,0.35,0.25,0.3375,0.375,0.425,0.375,0.4,0.35,0.3,0.3,0.375,0.5,0.5
6374002,0.475,0.475,1,0.325,0.475,0.425,0.325,0.325,0.375,0.375,0.325,0.45,0.475,0.375,0.275,0.3625,0.4,0.45,0.4,0.375,0.375,0.325,0.325,0.4,0.475,0.475
426627000,0.3,0.3,0.325,1,0.325,0.4,0.5,0.5,0.45,0.45,0.5,0.375,0.35,0.45,0.45,0.4625,0.425,0.375,0.425,0.2,0.45,0.5,0.5,0.425,0.3,0.3
733534002|164909002,0.475,0.475,0.475,0.325,1,0.425,0.325,0.325,0.375,0.375,0.325,0.45,0.475,0.375,0.275,0.3625,0.4,0.45,0.4,0.375,0.375,0.325,0.325,0.4,0.475,0.475
713427006|59118001,0.4,0.4,0.425,0.4,0.425,1,0.4,0.4,0.45,0.45,0.4,0.475,0.45,0.45,0.35,0.4375,0.475,0.475,0.475,0.3,0.45,0.4,0.4,0.475,0.4,0.4
270492004,0.3,0.3,0.325,0.5,0.325,0.4,1,0.5,0.45,0.45,0.5,0.375,0.35,0.45,0.45,0.4625,0.425,0.375,0.425,0.2,0.45,0.5,0.5,0.425,0.3,0.3
713426002,0.3,0.3,0.325,0.5,0.325,0.4,0.5,1,0.45,0.45,0.5,0.375,0.35,0.45,0.45,0.4625,0.425,0.375,0.425,0.2,0.45,0.5,0.5,0.425,0.3,0.3
39732003,0.35,0.35,0.375,0.45,0.375,0.45,0.45,0.45,1,0.5,0.45,0.425,0.4,0.5,0.4,0.4875,0.475,0.425,0.475,0.25,0.5,0.45,0.45,0.475,0.35,0.35
445118002,0.35,0.35,0.375,0.45,0.375,0.45,0.45,0.45,0.5,1,0.45,0.425,0.4,0.5,0.4,0.4875,0.475,0.425,0.475,0.25,0.5,0.45,0.45,0.475,0.35,0.35
164947007,0.3,0.3,0.325,0.5,0.325,0.4,0.5,0.5,0.45,0.45,1,0.375,0.35,0.45,0.45,0.4625,0.425,0.375,0.425,0.2,0.45,0.5,0.5,0.425,0.3,0.3
251146004,0.425,0.425,0.45,0.375,0.45,0.475,0.375,0.375,0.425,0.425,0.375,1,0.475,0.425,0.325,0.4125,0.45,0.475,0.45,0.325,0.425,0.375,0.375,0.45,0.425,0.425
111975006,0.45,0.45,0.475,0.35,0.475,0.45,0.35,0.35,0.4,0.4,0.35,0.475,1,0.4,0.3,0.3875,0.425,0.475,0.425,0.35,0.4,0.35,0.35,0.425,0.45,0.45
698252002,0.35,0.35,0.375,0.45,0.375,0.45,0.45,0.45,0.5,0.5,0.45,0.425,0.4,1,0.4,0.4875,0.475,0.425,0.475,0.25,0.5,0.45,0.45,0.475,0.35,0.35
426783006,0.25,0.25,0.275,0.45,0.275,0.35,0.45,0.45,0.4,0.4,0.45,0.325,0.3,0.4,1,0.4125,0.375,0.325,0.375,0.15,0.4,0.45,0.45,0.375,0.25,0.25
284470004|63593006,0.3375,0.3375,0.3625,0.4625,0.3625,0.4375,0.4625,0.4625,0.4875,0.4875,0.4625,0.4125,0.3875,0.4875,0.4125,1,0.4625,0.4125,0.4625,0.2375,0.4875,0.4625,0.4625,0.4625,0.3375,0.3375
10370003,0.375,0.375,0.4,0.425,0.4,0.475,0.425,0.425,0.475,0.475,0.425,0.45,0.425,0.475,0.375,0.4625,1,0.45,0.5,0.275,0.475,0.425,0.425,0.5,0.375,0.375
365413008,0.425,0.425,0.45,0.375,0.45,0.475,0.375,0.375,0.425,0.425,0.375,0.475,0.475,0.425,0.325,0.4125,0.45,1,0.45,0.325,0.425,0.375,0.375,0.45,0.425,0.425
427172004|17338001,0.375,0.375,0.4,0.425,0.4,0.475,0.425,0.425,0.475,0.475,0.425,0.45,0.425,0.475,0.375,0.4625,0.5,0.45,1,0.275,0.475,0.425,0.425,0.5,0.375,0.375
164917005,0.4,0.4,0.375,0.2,0.375,0.3,0.2,0.2,0.25,0.25,0.2,0.325,0.35,0.25,0.15,0.2375,0.275,0.325,0.275,1,0.25,0.2,0.2,0.275,0.4,0.4
47665007,0.35,0.35,0.375,0.45,0.375,0.45,0.45,0.45,0.5,0.5,0.45,0.425,0.4,0.5,0.4,0.4875,0.475,0.425,0.475,0.25,1,0.45,0.45,0.475,0.35,0.35
427393009,0.3,0.3,0.325,0.5,0.325,0.4,0.5,0.5,0.45,0.45,0.5,0.375,0.35,0.45,0.45,0.4625,0.425,0.375,0.425,0.2,0.45,1,0.5,0.425,0.3,0.3
426177001,0.3,0.3,0.325,0.5,0.325,0.4,0.5,0.5,0.45,0.45,0.5,0.375,0.35,0.45,0.45,0.4625,0.425,0.375,0.425,0.2,0.45,0.5,1,0.425,0.3,0.3
427084000,0.375,0.375,0.4,0.425,0.4,0.475,0.425,0.425,0.475,0.475,0.425,0.45,0.425,0.475,0.375,0.4625,0.5,0.45,0.5,0.275,0.475,0.425,0.425,1,0.375,0.375
164934002,0.5,0.5,0.475,0.3,0.475,0.4,0.3,0.3,0.35,0.35,0.3,0.425,0.45,0.35,0.25,0.3375,0.375,0.425,0.375,0.4,0.35,0.3,0.3,0.375,1,0.5
59931005,0.5,0.5,0.475,0.3,0.475,0.4,0.3,0.3,0.35,0.35,0.3,0.425,0.45,0.35,0.25,0.3375,0.375,0.425,0.375,0.4,0.35,0.3,0.3,0.375,0.5,1
"""


def _table(text: str) -> Dict[str, Tuple[str, str]]:
    out = {}
    for line in text.strip().splitlines():
        code, abbr, name = line.split(",", 2)
        out[code] = (abbr, name)
    return out


SCORED_CODES: Dict[str, Tuple[str, str]] = _table(_SCORED)
UNSCORED_CODES: Dict[str, Tuple[str, str]] = _table(_UNSCORED)
SNOMED: Dict[str, Tuple[str, str]] = {**UNSCORED_CODES, **SCORED_CODES}  # code -> (abbreviation, name)


def _parse_weights() -> Tuple[List[str], np.ndarray]:
    lines = _WEIGHTS_CSV.strip().splitlines()
    cols = lines[0].split(",")[1:]
    rows, vals = [], []
    for line in lines[1:]:
        parts = line.split(",")
        rows.append(parts[0])
        vals.append([float(v) for v in parts[1:]])
    assert rows == cols
    return cols, np.asarray(vals, dtype=np.float64)


WEIGHT_CLASSES, WEIGHTS = _parse_weights()  # 26 class keys ("733534002|164909002"), (26, 26)
SCORED_CLASSES: List[str] = list(WEIGHT_CLASSES)
# code -> class key, for every scored code and its equivalents
EQUIVALENT: Dict[str, str] = {c: key for key in WEIGHT_CLASSES for c in key.split("|")}


def class_key(code: str) -> str:
    """The class a SNOMED code belongs to: ``"59118001"`` -> ``"713427006|59118001"``."""
    return EQUIVALENT.get(code, code)


def class_code(key: str) -> str:
    """The code written in output files for a class: the first of its equivalent codes."""
    return key.split("|")[0]


def class_abbr(key: str) -> str:
    """``"713427006|59118001"`` -> ``"CRBBB|RBBB"``; unknown codes stay as they are."""
    return "|".join(SNOMED.get(c, (c, ""))[0] for c in key.split("|"))


def class_name(key: str) -> str:
    """``"713427006|59118001"`` -> ``"complete right bundle branch block|right bundle branch block"``."""
    return "|".join(SNOMED.get(c, ("", "unknown code " + c))[1] for c in key.split("|"))


@dataclass
class LabelSpace:
    """An ordered list of classes (keys like ``"164889003"`` or ``"713427006|59118001"``)."""

    classes: List[str]

    def __post_init__(self):
        self.classes = list(self.classes)
        self._index = {k: i for i, k in enumerate(self.classes)}

    @classmethod
    def scored(cls) -> "LabelSpace":
        """The 26 classes scored by the 2021 Challenge, in ``weights.csv`` order."""
        return cls(SCORED_CLASSES)

    @classmethod
    def from_dx(cls, dx_lists: Iterable[Sequence[str]], min_count: int = 1) -> "LabelSpace":
        """Every class present in ``dx_lists`` at least ``min_count`` times (equivalences merged).

        Scored classes come first in ``weights.csv`` order, then the others by code.
        """
        counts: Dict[str, int] = {}
        for dx in dx_lists:
            for key in {class_key(c) for c in dx}:
                counts[key] = counts.get(key, 0) + 1
        keep = {k for k, n in counts.items() if n >= min_count}
        scored = [k for k in SCORED_CLASSES if k in keep]
        other = sorted((k for k in keep if k not in EQUIVALENT.values()), key=lambda k: (len(k), k))
        return cls(scored + other)

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def codes(self) -> List[str]:
        """The code written for each class in the Challenge output files."""
        return [class_code(k) for k in self.classes]

    @property
    def abbreviations(self) -> List[str]:
        return [class_abbr(k) for k in self.classes]

    def encode(self, dx: Sequence[str]) -> np.ndarray:
        """SNOMED codes of one record -> multi-hot ``(num_classes,)`` float32 (unknown codes ignored)."""
        y = np.zeros(len(self.classes), dtype=np.float32)
        for c in dx:
            i = self._index.get(class_key(c))
            if i is not None:
                y[i] = 1.0
        return y

    def scored_subset(self) -> Tuple[np.ndarray, np.ndarray, Optional[int]]:
        """Columns of this space that the Challenge scores, their weights and the normal column.

        Returns ``(idx (K,), weights (K, K), normal position in idx or None)``.
        """
        pos = {k: i for i, k in enumerate(WEIGHT_CLASSES)}
        idx = [i for i, k in enumerate(self.classes) if k in pos]
        w_idx = [pos[self.classes[i]] for i in idx]
        w = WEIGHTS[np.ix_(w_idx, w_idx)]
        normal = next((j for j, i in enumerate(idx) if self.classes[i] == NORMAL_CODE), None)
        return np.asarray(idx, dtype=np.int64), w, normal
